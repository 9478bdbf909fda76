"""The data audit (`deepfit data audit`): what in a labelled data set would make results wrong or optimistic.

    duplicates.py  exact copies (content digests) and near copies (perceptual hashes of images, cosine similarity of
                   embeddings for any modality), inside a split and across splits
    labels.py      likely label errors from out-of-fold probabilities (cleanlab's confident learning) and outliers
    objects.py     boxes and masks that are degenerate, duplicated or far outside their class's usual size
    page.py        the HTML page and the CSVs
The workflow joining them over the task interface is workflows/audit.py.
"""
