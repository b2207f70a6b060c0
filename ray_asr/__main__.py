from ray_asr.cli import main

raise SystemExit(main())
