"""`edge-agent fleet status` against a broker that cannot be reached: the command connects a
real socket, so it is here, not among the unit tests of the fleet commands
(tests/unit/test_fleet_cli.py)."""
from __future__ import annotations


def test_status_from_a_broker_that_cannot_be_reached_says_so(capsys):
    from edge_agent.app.cli import main

    assert main(["fleet", "status", "--url", "s3://b/p", "--fleet", "plant",
                 "--mqtt-url", "mqtt://127.0.0.1:9"]) == 1
    assert "cannot reach the broker mqtt://127.0.0.1:9" in capsys.readouterr().err
