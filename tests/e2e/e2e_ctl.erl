%% Test control loop for a plain Erlang node in the end-to-end suite.
%%
%% The Rust harness starts `erl -noshell ... -s e2e_ctl main` and writes one
%% Erlang expression per line on the node's stdin; the node evaluates it and
%% prints `E2E> {ok,Value}` or `E2E> {error,{Class,Reason}}` on one line
%% (~w, so it never wraps). Other output (logger reports) is passed through
%% and ignored by the harness. End of stdin halts the node, so a harness
%% that dies takes its nodes with it.
-module(e2e_ctl).
-export([main/0, events/0]).

main() ->
    %% Every nodeup/nodedown is recorded from the start, so a test can show
    %% that a connection was never dropped (no nodedown) across a fault.
    Watch = spawn(fun() -> ok = net_kernel:monitor_nodes(true), watch([]) end),
    register(e2e_watch, Watch),
    io:format("E2E-READY ~w ~w~n", [node(), erlang:system_info(creation)]),
    loop().

loop() ->
    case io:get_line('') of
        eof -> erlang:halt(0);
        {error, _} -> erlang:halt(0);
        Line ->
            Reply = try eval(Line) of
                        V -> {ok, V}
                    catch
                        C:R -> {error, {C, R}}
                    end,
            io:format("E2E> ~w~n", [Reply]),
            loop()
    end.

eval(Line) ->
    {ok, Toks, _} = erl_scan:string(Line),
    {ok, Exprs} = erl_parse:parse_exprs(Toks),
    {value, V, _} = erl_eval:exprs(Exprs, []),
    V.

%% nodeup/nodedown events seen so far, oldest first.
events() ->
    e2e_watch ! {get, self()},
    receive {events, E} -> E after 5000 -> timeout end.

watch(Evs) ->
    receive
        {nodeup, N} -> watch([{up, N} | Evs]);
        {nodedown, N} -> watch([{down, N} | Evs]);
        {get, From} -> From ! {events, lists:reverse(Evs)}, watch(Evs)
    end.
