from distill.front.cli import main

main()
