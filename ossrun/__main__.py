from ossrun.cli import main

main()
