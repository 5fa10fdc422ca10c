from styletx.cli import main

main()
