-- All requests for one id (the URL given to wrk); only the report is added.
dofile(os.getenv("BENCH_LUA_DIR") .. "/report.lua")
