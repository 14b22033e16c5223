# Makes includes/ a package for cimport (includes.system, includes.sigbus_guard).
