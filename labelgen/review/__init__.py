"""People correct the masks: a review queue sent to Label Studio, their corrections read back (from
its API, or from files exported by Label Studio or CVAT), and kept in the run as pulled sets that the
`corrections` stage turns into the masks `train_decoder` trains on and `evaluate` scores against."""
