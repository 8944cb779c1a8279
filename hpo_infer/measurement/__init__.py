"""What one measurement is: the request a trial process gets, the events and typed result it sends
back (:mod:`protocol`, :mod:`result`), and how its passes are timed (:mod:`timing`)."""
