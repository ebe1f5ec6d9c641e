from thinkwheel.cli import main

main()
