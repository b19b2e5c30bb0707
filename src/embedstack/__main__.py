from embedstack.cli import main

main()
