"""`compressflow spec`: the JSON schema and the docs' table of job-spec fields (docs/jobs.md)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipeline import spec
from pipeline.cli import spec as spec_cli
from pipeline.cli.errors import UserError
from pipeline.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SPEC_PAGE = ROOT / "docs" / "jobs.md"
REGENERATE = ".venv/bin/compressflow spec --table --readme docs/jobs.md"


def test_readme_table_is_current():
    readme = spec_cli.readme_table(SPEC_PAGE.read_text())
    assert readme == spec_cli.fields_table(), (
        "docs/jobs.md's 'Job spec fields' table differs from the job spec "
        f"(pipeline/spec.py); regenerate it with `{REGENERATE}`"
    )


def test_every_field_has_a_description():
    def undescribed(model: type, prefix: str = "") -> list[str]:
        out = []
        for name, field in model.model_fields.items():
            if not field.description:
                out.append(prefix + name)
            if isinstance(field.annotation, type) and issubclass(field.annotation, spec.BaseModel):
                out += undescribed(field.annotation, f"{prefix}{name}.")
        return out

    missing = undescribed(spec.JobSpec)
    assert not missing, (
        f"job-spec fields without description=: {missing} (pipeline/spec.py); "
        f"then regenerate the docs' table with `{REGENERATE}`"
    )


def test_table_has_every_field_with_its_default():
    rows = {
        line.split(" | ")[0].strip("| `"): line for line in spec_cli.fields_table().splitlines()
    }
    for path in ("finetune.pretrain_lr", "model.source", "runner.address", "learners", "seed"):
        assert path in rows, path
    assert "| `0.1` |" in rows["finetune.pretrain_lr"]
    assert '| `["channel"]` |' in rows["learners"]  # a default_factory's value is shown
    assert "| required |" in rows["target"]
    assert "| fields below |" in rows["budget"]
    assert "integer (>= 1) or null" in rows["budget.rounds"]
    assert "`num_classes`" in rows["model.source"] and "`in_channels`" in rows["model.source"]
    assert "&lt;dir>" in rows["data.source"]  # not swallowed as an HTML tag


def test_schema_command_prints_json(capsys):
    assert main(["spec", "--schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["title"] == "JobSpec"
    assert schema["required"] == ["target"]
    assert schema["properties"]["seed"]["default"] == 0
    assert schema["$defs"]["Finetune"]["properties"]["pretrain_lr"]["description"]


def test_table_command_prints_the_table(capsys):
    assert main(["spec", "--table"]) == 0
    assert capsys.readouterr().out == spec_cli.fields_table()


def test_readme_option_rewrites_only_the_table(tmp_path, capsys):
    doc = tmp_path / "README.md"
    doc.write_text(f"# x\n\nbefore\n{spec_cli.TABLE_START}\nstale\n{spec_cli.TABLE_END}\nafter\n")
    assert main(["spec", "--table", "--readme", str(doc)]) == 0
    text = doc.read_text()
    assert text.startswith("# x\n\nbefore\n") and text.endswith(f"{spec_cli.TABLE_END}\nafter\n")
    assert spec_cli.readme_table(text) == spec_cli.fields_table()
    doc.write_text("no markers\n")
    assert main(["spec", "--table", "--readme", str(doc)]) == 2
    assert "markers" in capsys.readouterr().err
    with pytest.raises(UserError, match="markers"):
        spec_cli.readme_table("no markers\n")


@pytest.mark.parametrize("field", sorted(spec_cli.STRING_SHORTHANDS))
def test_string_shorthands_are_real(field):
    """The schema lets these fields be strings; the spec must accept that too."""
    value = {"model": "resnet20", "data": "digits", "learners": "channel"}[field]
    job = spec.parse({"target": {"speedup": 2}, field: value})
    assert getattr(job, field)


def test_example_jobs_validate_against_the_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = spec_cli.job_schema()
    jobs = sorted((ROOT / "jobs").glob("*.yaml"))
    assert jobs
    for path in jobs:
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"target": {"speedup": 2}, "budget": {"round": 3}}, schema)
