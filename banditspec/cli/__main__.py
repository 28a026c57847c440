from banditspec.cli.main import main

main()
