from argus.cli import app

app(prog_name="argus")
