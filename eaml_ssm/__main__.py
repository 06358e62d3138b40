from eaml_ssm.cli import main

raise SystemExit(main())
