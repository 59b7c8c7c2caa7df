from careplane.cli import main

main()
