"""Signed model packages (SPEC §5): the manifest, building, signing and verifying
(packages.py), safe unpacking of archives (archive.py), Ed25519 keys and the trust folder
(keys.py), versions (versions.py) and test vectors (vectors.py), with the `keygen`,
`package` and `verify` commands (cli.py). It may import platform, and the shared
models.model_files that opens every file on the load path; nothing that serves.
"""
