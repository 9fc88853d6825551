# Shallow-Deep Networks (Kaya, Hong, Dumitras, ICML 2019): the whole reproduction as one workflow.
#   snakemake --profile workflow/profiles/default                               # embedded default (digits, CPU)
#   snakemake --profile workflow/profiles/default --configfile config/paper.yaml --resources gpu=1
import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


# The embedded default, unless a --configfile was given (a --configfile replaces it; --config amends either).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


try:
    validate(config, "workflow/schemas/config.schema.yaml")
except WorkflowError as err:  # Snakemake's message holds the whole schema: say what is wrong, briefly
    from sdn.config_checks import schema_problems

    schema = os.path.join(workflow.basedir, "workflow/schemas/config.schema.yaml")
    problems = schema_problems(config, schema) or [str(err).splitlines()[0]]
    raise WorkflowError("invalid configuration:\n  " + "\n  ".join(problems)) from None
from sdn.config_checks import check_config; check_config(config)  # what the schema cannot express


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
if config.get("published"):  # published runs replace training and evaluation (workflow/rules/published.smk)

    include: "workflow/rules/published.smk"

else:

    include: "workflow/rules/train.smk"
    include: "workflow/rules/evaluate.smk"

include: "workflow/rules/analyses.smk"
include: "workflow/rules/backdoor.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        all_targets(),
    default_target: True
