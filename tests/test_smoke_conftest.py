def test_toy_is_valid(toy, run_cli):
    r = run_cli("validate", str(toy.yaml))
    assert r.exit_code == 0, r.stderr
    assert "participants 3" in r.stdout


def test_error_exit_code(toy, run_cli):
    toy.write_yaml("name: toy\nseed: -1\n")
    r = run_cli("validate", str(toy.yaml))
    assert r.exit_code == 2
    assert "Traceback" not in r.stderr
    print(r.stderr)
