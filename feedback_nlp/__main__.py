from feedback_nlp.cli import main

main()
