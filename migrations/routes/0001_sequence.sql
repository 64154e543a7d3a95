-- Every change to a node row takes the next revision from this sequence.
CREATE SEQUENCE "routes"."revision_seq";
