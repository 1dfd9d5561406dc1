from labelgen.cli import main

main()
