%% Common Test hook for running OTP's epmd_SUITE against a chosen epmd.
%%
%% The suite starts the daemon it tests with os:find_executable(epmd), and
%% erlexec puts OTP's own bin directories at the front of PATH, so without
%% this hook it always finds OTP's C epmd. The hook puts the directory in
%% EPMD_UNDER_TEST_DIR (holding an `epmd` that is the daemon under test)
%% first, then writes what the suite will now find to the file named by
%% EPMD_UNDER_TEST_FOUND, so the caller can check it is the right binary.
-module(epmd_under_test_cth).
-export([init/2]).

init(_Id, _Opts) ->
    Dir = os:getenv("EPMD_UNDER_TEST_DIR"),
    true = os:putenv("PATH", Dir ++ ":" ++ os:getenv("PATH")),
    Found = os:find_executable("epmd"),
    ok = file:write_file(os:getenv("EPMD_UNDER_TEST_FOUND"), Found),
    {ok, undefined}.
