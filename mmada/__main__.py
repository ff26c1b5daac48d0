from mmada.cli import main

raise SystemExit(main())
