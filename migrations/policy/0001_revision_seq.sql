-- Every change to what policy sees takes the next revision: per-node rule streams resume from one.
CREATE SEQUENCE "policy"."revision_seq";
