from edge_agent.app.cli import main

raise SystemExit(main())
