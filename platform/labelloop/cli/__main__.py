from labelloop.cli.main import app

app(prog_name="labelloop")
