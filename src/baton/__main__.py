from baton.cli.main import main

raise SystemExit(main())
