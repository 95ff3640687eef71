//! Pure governance logic for meshguard: time and randomness are parameters, no I/O.
