//! dev (wip)
