-- POST /token grant_type=client_credentials as the service client.
dofile(os.getenv("BENCH_LUA_DIR") .. "/common.lua")
form_post("grant_type=client_credentials&scope=" .. env("BENCH_SCOPE", "api"))
