"""Analyses of logged results: scaling-law fits, IsoFLOP, batch-size, mixing and schedule studies, plots, reports.

Independent of the training code: everything here reads CSV tables (a sweep's results.csv or a published
table) and writes JSON, figures and an HTML report. Entry points: `analysis.commands` (the `mdiff fit` and
`mdiff report` subcommands), `analysis.scaling.fit_scaling_law`, `analysis.report.build_report`.
"""
