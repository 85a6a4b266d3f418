from storebot.cli import main

raise SystemExit(main())
