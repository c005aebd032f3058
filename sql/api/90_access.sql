-- Nothing in schema holdfast is callable or readable by PUBLIC: what a role may use is the
-- grant written beside each function and view. (New functions get EXECUTE for PUBLIC by
-- default; this takes it back from all of them, the private helpers included.)
revoke all on all functions in schema holdfast from public;
revoke all on all tables in schema holdfast from public;
