"""The sweep machinery behind `mdiff.sweep`: define (combinators), expand (load + validate),
state (sweep directory files, results.csv), runner (local processes), emit (cluster scripts)."""
