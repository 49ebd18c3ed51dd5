from spanqa.cli import main

main()
