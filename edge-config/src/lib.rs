//! Configuration of one shouwang gateway (work in progress).
