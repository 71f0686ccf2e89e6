"""What a trained SCSN does, read with forward hooks (the model code is unchanged): RDAM's gates and NMFF's share and
sign (``gates``), the SFE units' stripe weights (``stripes``), each stage's descriptor (``stages``)."""
