from abtest.cli import app

app(prog_name="abtest")
