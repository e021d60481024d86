from spiralctl.entry import main

main()
