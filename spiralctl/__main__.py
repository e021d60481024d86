from spiralctl.cli import main

main()
