"""Writers for the files image-generation tools load: the original-layout single-file checkpoint
(single_file.py) and weight files saved in a chosen precision (precision.py)."""
