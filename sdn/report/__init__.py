"""The report: gather every result under ``results/`` into tables, figures and a summary.md (``sdn report``)."""
