"""A job as written: the job file parsed and snapped (spec), the files it names (attachments), the rules for names."""
