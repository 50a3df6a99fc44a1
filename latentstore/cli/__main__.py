from latentstore.cli import app

app()
