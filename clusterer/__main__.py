from clusterer.cli import main

main()
