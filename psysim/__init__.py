"""psysim: simulate cohorts of human participants with language models, and measure how human-like they are.

The public API, in reading order::

    exp = psysim.load_experiment("experiments/quickstart.yaml")   # checks everything
    exp.summary()                                                  # counts
    exp.render("108", "persona", format="chat")                    # exactly what a model reads
    psysim.run_experiment(exp)                                     # score it: trials.parquet
"""

from .config import ExperimentConfig, load_config
from .data.transcripts import Response, Transcript, parse_markup, read_psych201
from .data.trials import StructuredTask
from .errors import ConfigError, DataError, ModelError, Problem, PsysimError, TemplateError
from .experiment import Experiment, Prompt, Summary, load_experiment
from .participants import Cohort, Profile, ProfileSchema, load_cohort
from .render.chat import ChatTemplate, to_messages
from .render.persona import derangement, render_persona
from .run import RunResult, run_experiment

__version__ = "0.2.0"

__all__ = [
    "ChatTemplate",
    "Cohort",
    "ConfigError",
    "DataError",
    "Experiment",
    "ExperimentConfig",
    "ModelError",
    "Problem",
    "Profile",
    "ProfileSchema",
    "Prompt",
    "PsysimError",
    "Response",
    "RunResult",
    "StructuredTask",
    "Summary",
    "TemplateError",
    "Transcript",
    "__version__",
    "derangement",
    "load_cohort",
    "load_config",
    "load_experiment",
    "parse_markup",
    "read_psych201",
    "render_persona",
    "run_experiment",
    "to_messages",
]
