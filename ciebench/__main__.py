from ciebench.cli import main

main()
