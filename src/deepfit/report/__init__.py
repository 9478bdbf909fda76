"""The report kit: HTML page, plots and galleries shared by every task.

A lower layer: it knows nothing of tasks, workflows, the API or the CLI; each task's own ``report``
module (``deepfit.tasks.<task>.report``) keeps what is specific to it and builds its page from these.

    text       numbers as reports spell them (``87.5%``, ``0.857``, ``–``), CSV files
    html       the self-contained page: styles, escaping, summary, cards, tables, embedded figures
    page       the evaluation page every task writes, and the run details it shows (RunDetails)
    stats      95% confidence intervals (Wilson's, a seeded bootstrap over test images), standard errors
    trust      intervals under the headline cards, the one-class warning, the training options, worst first
    gallery    thumbnails (tiny ones enlarged), embedded JPEGs, galleries, panel strips, examples per class
    drawing    class colours, hex colours, the label font, arrays from numpy or torch
    plots      training curves, per-class bar charts, precision-recall curves, saving a figure
    confusion  the confusion matrix as a heat map and as CSV
"""
