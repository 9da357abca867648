from pet_core.cli import main

raise SystemExit(main())
