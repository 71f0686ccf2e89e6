"""Pictures: what each cascade stage pools and RDAM's attention (``saliency``, the paper's Fig. 6, read with forward
hooks), drawn as exact pixel grids with ranked lists (``pictures``)."""
