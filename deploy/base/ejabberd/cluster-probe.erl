%% cluster-probe.erl: gathers the facts the kube-epmd sidecar's cluster
%% planner decides on, and carries them to it. cluster-entrypoint.sh runs
%% it on a short-lived hidden node, as ejabberdctl would start one:
%%
%%   erl -sname|-name cluster-XXXX-PREFIX@HOST -hidden -noinput -noshell \
%%       -start_epmd false [dist window args] \
%%       -eval 'case file:script("/path/cluster-probe.erl") of {ok, _} -> halt(0); E -> io:format(standard_error, "cluster-probe: ~p~n", [E]), halt(2) end' \
%%       -extra MODE ARGS...
%%
%% Modes (the plain arguments after -extra):
%%   nodes ADMIN SELF     print the other pods' node names as the sidecar
%%                        lists them (GET http://ADMIN/cluster/nodes)
%%   query ADMIN SELF     print one line of JSON: {"self":..,"nodes":[NODEFACT..]}
%%   plan ADMIN SELF PHASE MARKER SINCE_START SINCE_PHASE LOAD_GRACE HOLD_MAX JOIN_TIMEOUT [PARTITION PAUSED]
%%                        observe as query does, POST the facts to
%%                        http://ADMIN/cluster/plan and print its answer
%%                        (two lines: the action, then the reason) verbatim;
%%                        PARTITION pause_minority|autoheal (default
%%                        pause_minority), PAUSED true|false (default false)
%%   diverged SELF FROM   the tables whose content differs between SELF and
%%                        FROM (both running Mnesia), one line each:
%%                        TABLE SELF_SIZE FROM_SIZE
%%   schema DIR SELF      print the nodes of the Mnesia schema on disc in DIR
%%                        but SELF, Mnesia not started
%%   force-load NODE      MANUAL ESCAPE HATCH, loses data (see the
%%                        entrypoint's header): NODE loads every local
%%                        table from its own disc copy now
%%
%% Exit codes: 0 done, 2 usage (bad arguments), 3 the sidecar did not
%% answer or answered other than 200 (its status and body go to stderr),
%% 124 the run took too long, 1 anything else. Only stdout carries results;
%% every message goes to stderr.
%%
%% Why a file of expressions and not a module: the official ejabberd
%% image's release erts may come without the compiler application, and
%% file:script/2 evaluates with erl_eval. So: named funs for recursion, no
%% records or macros, and only kernel and stdlib (no inets, no json: OTP 25
%% has no json module). It must run unchanged on OTP 25 through 29.
%%
%% erl_eval rule this file lives by: a fun body sees every variable bound
%% before the fun was made, and `X = ...` on such a variable is a MATCH, not
%% a new binding. So the top level binds only the long names of the funs
%% below, and no fun body reuses one of them for anything else.

%% ---------------------------------------------------------------------
%% The bound on the whole run. The shell's own steps wait on us; a peer
%% that accepts a connection and never answers must not hang them. 55 s
%% leaves the VM's start and stop inside 60 s. The budget below it: 10 s
%% per HTTP exchange (two at most) and 30 s for observing every node (in
%% parallel).
ProbeDeadlineMs = 55000,
ObserveBudgetMs = 30000,
HttpTimeoutMs = 10000,
RpcTimeoutMs = 10000,
%% The message is written by a process of its own: a stderr nobody reads
%% must not hold up the halt.
_ = spawn(fun() ->
                  receive after ProbeDeadlineMs ->
                          _ = spawn(fun() -> io:put_chars(standard_error, "cluster-probe: timed out\n") end),
                          receive after 200 -> halt(124) end
                  end
          end),

%% Log events (a refused connection, an illegal host name) go to stderr:
%% with -noshell the default handler writes to stdout, which the shell
%% parses.
_ = logger:remove_handler(default),
_ = logger:add_handler(default, logger_std_h, #{config => #{type => standard_error}}),

%% ---------------------------------------------------------------------
%% Failing: every error path throws this, and the top level turns it into
%% a message on stderr and the exit code.
ProbeFail = fun(Code, Format, FormatArgs) ->
                    throw({cluster_probe_exit, Code, io_lib:format(Format, FormatArgs)})
            end,
ProbeUsage =
    "usage: MODE ARGS... after -extra, one of\n"
    "  nodes ADMIN SELF\n"
    "  query ADMIN SELF\n"
    "  plan ADMIN SELF PHASE MARKER SINCE_START SINCE_PHASE LOAD_GRACE HOLD_MAX JOIN_TIMEOUT [PARTITION PAUSED]\n"
    "       (PHASE boot|joining|running, MARKER true|false, the rest non-negative integers;\n"
    "        PARTITION pause_minority|autoheal, PAUSED true|false)\n"
    "  diverged SELF FROM\n"
    "  force-load NODE\n"
    "  schema DIR SELF\n"
    "ADMIN is the sidecar's admin address, host:port",
BadArg = fun(Format, FormatArgs) ->
                 ProbeFail(2, "~ts~n~ts", [io_lib:format(Format, FormatArgs), ProbeUsage])
         end,

%% Results (iodata: bytes, text as UTF-8) to stdout byte for byte. Under -noshell OTP 25's standard_io is
%% a latin1 device (put_chars would re-encode UTF-8 bytes as characters),
%% OTP 26+'s is unicode when the locale is UTF-8 (file:write would encode
%% each byte as a character). Each gets the call that passes bytes through.
EmitStdout = fun(IoData) ->
                     Bytes = iolist_to_binary(IoData),
                     case lists:keyfind(encoding, 1, io:getopts(standard_io)) of
                         {encoding, unicode} -> ok = io:put_chars(standard_io, Bytes);
                         _ -> ok = file:write(standard_io, Bytes)
                     end
             end,

%% ---------------------------------------------------------------------
%% Arguments.
IsDigits = fun(Str) -> Str =/= "" andalso lists:all(fun(Ch) -> Ch >= $0 andalso Ch =< $9 end, Str) end,
ArgCount = fun(What, Str) ->
                   case IsDigits(Str) of
                       true -> list_to_integer(Str);
                       false -> BadArg("~ts must be a non-negative integer, not ~tp", [What, Str])
                   end
           end,
ArgNode = fun(What, Str) ->
                  case string:split(Str, "@") of
                      [[_ | _], [_ | _]] -> list_to_atom(Str);
                      _ -> BadArg("~ts must be a node name NAME@HOST, not ~tp", [What, Str])
                  end
          end,
ArgOneOf = fun(What, Str, Allowed) ->
                   case lists:member(Str, Allowed) of
                       true -> list_to_atom(Str);
                       false -> BadArg("~ts must be one of ~ts, not ~tp",
                                       [What, lists:join("|", Allowed), Str])
                   end
           end,
%% ADMIN: host:port, the host an IP address ([v6] in brackets) or a name.
ArgAdmin = fun(Str) ->
                   case string:split(Str, ":", trailing) of
                       [HostPart, PortPart] when HostPart =/= "" ->
                           PortNum = case IsDigits(PortPart) of
                                         true -> list_to_integer(PortPart);
                                         false -> 0
                                     end,
                           Bare = string:trim(HostPart, both, "[]"),
                           Connect = case inet:parse_address(Bare) of
                                         {ok, Ip} -> Ip;
                                         {error, _} -> Bare
                                     end,
                           case PortNum >= 1 andalso PortNum =< 65535 of
                               true -> #{connect => Connect, port => PortNum, authority => Str};
                               false -> BadArg("ADMIN must be host:port, not ~tp", [Str])
                           end;
                       _ -> BadArg("ADMIN must be host:port, not ~tp", [Str])
                   end
           end,

%% ---------------------------------------------------------------------
%% JSON, written by hand (OTP 25 has no json module). Terms: binaries are
%% UTF-8 strings, lists arrays, {object, [{KeyBinary, Value}]} objects (in
%% that key order), integers numbers, true/false booleans.
JsonEscapeByte = fun($") -> <<"\\\"">>;
                    ($\\) -> <<"\\\\">>;
                    ($\n) -> <<"\\n">>;
                    ($\r) -> <<"\\r">>;
                    ($\t) -> <<"\\t">>;
                    (Byte) when Byte < 16#20 -> io_lib:format("\\u~4.16.0b", [Byte]);
                    (Byte) -> Byte
                 end,
%% Byte by byte is right for UTF-8: every byte of a multi-byte character
%% is >= 0x80 and passes unchanged.
JsonString = fun(Utf8) -> [$", [JsonEscapeByte(Byte) || <<Byte>> <= Utf8], $"] end,
JsonEncode = fun Encode(true) -> <<"true">>;
                 Encode(false) -> <<"false">>;
                 Encode(Int) when is_integer(Int) -> integer_to_binary(Int);
                 Encode(Utf8) when is_binary(Utf8) -> JsonString(Utf8);
                 Encode({object, Pairs}) ->
                     [${, lists:join($,, [[JsonString(Key), $:, Encode(Val)] || {Key, Val} <- Pairs]), $}];
                 Encode(Items) when is_list(Items) -> [$[, lists:join($,, [Encode(Item) || Item <- Items]), $]]
             end,
NodeBin = fun(Node) -> atom_to_binary(Node, utf8) end,

%% ---------------------------------------------------------------------
%% HTTP/1.0 over gen_tcp (no inets: not in every release). HTTP/1.0 keeps
%% the answer simple: never chunked, the connection closed after it. The
%% body ends at Content-Length when the server sends one, else at the
%% close. One 10 s deadline covers connect, send and the whole answer.
UrlEncode = fun(Str) ->
                    [case Byte of
                         _ when Byte >= $a, Byte =< $z; Byte >= $A, Byte =< $Z;
                                Byte >= $0, Byte =< $9; Byte =:= $-; Byte =:= $.;
                                Byte =:= $_; Byte =:= $~ -> Byte;
                         _ -> io_lib:format("%~2.16.0B", [Byte])
                     end || <<Byte>> <= unicode:characters_to_binary(Str)]
            end,
%% {Status, Headers (lowercase names), BodySoFar} once the head is in, or
%% more while it is not.
HttpParseHead = fun(Raw) ->
                        Headers = fun Loop(Rest, Acc) ->
                                          case erlang:decode_packet(httph_bin, Rest, []) of
                                              {ok, {http_header, _, Name, _, Value}, Rest2} ->
                                                  Lower = string:lowercase(
                                                            if is_atom(Name) -> atom_to_binary(Name, utf8);
                                                               true -> Name
                                                            end),
                                                  Loop(Rest2, [{Lower, Value} | Acc]);
                                              {ok, http_eoh, Body} -> {ok, lists:reverse(Acc), Body};
                                              {more, _} -> more;
                                              Other -> {error, Other}
                                          end
                                  end,
                        case erlang:decode_packet(http_bin, Raw, []) of
                            {ok, {http_response, _, Status, _}, AfterStatus} ->
                                case Headers(AfterStatus, []) of
                                    {ok, Hs, Body} -> {Status, Hs, Body};
                                    more -> more;
                                    Err -> Err
                                end;
                            {more, _} -> more;
                            Other -> {error, Other}
                        end
                end,
%% The whole body when it is in: Content-Length's worth, or all at the close.
HttpComplete = fun(Raw, Closed) ->
                       case HttpParseHead(Raw) of
                           {Status, Hs, Body} ->
                               Length = case lists:keyfind(<<"content-length">>, 1, Hs) of
                                            {_, LenBin} -> string:to_integer(LenBin);
                                            false -> none
                                        end,
                               case Length of
                                   {Len, _} when is_integer(Len), byte_size(Body) >= Len ->
                                       {done, Status, binary:part(Body, 0, Len)};
                                   {Len, _} when is_integer(Len), Closed ->
                                       {error, {truncated, byte_size(Body), Len}};
                                   _ when Closed -> {done, Status, Body};
                                   _ -> more
                               end;
                           more when Closed -> {error, {truncated_head, Raw}};
                           more -> more;
                           Err -> Err
                       end
               end,
%% Status and body of METHOD TARGET at ADMIN. No answer: exit 3.
HttpRequest = fun(Admin, Method, Target, ContentType, ReqBody) ->
                      #{connect := Connect, port := Port, authority := Authority} = Admin,
                      Deadline = erlang:monotonic_time(millisecond) + HttpTimeoutMs,
                      Left = fun() -> max(0, Deadline - erlang:monotonic_time(millisecond)) end,
                      NoAnswer = fun(Why) ->
                                         ProbeFail(3, "the sidecar at ~ts did not answer ~ts ~ts: ~tp",
                                                   [Authority, Method, Target, Why])
                                 end,
                      Sock = case gen_tcp:connect(Connect, Port, [binary, {active, false}, {packet, raw}],
                                                  HttpTimeoutMs) of
                                 {ok, S} -> S;
                                 {error, ConnErr} -> NoAnswer(ConnErr)
                             end,
                      BodyHead = case ReqBody of
                                     none -> [];
                                     _ -> ["Content-Type: ", ContentType, "\r\n",
                                           "Content-Length: ", integer_to_list(iolist_size(ReqBody)), "\r\n"]
                                 end,
                      Request = [Method, " ", Target, " HTTP/1.0\r\n",
                                 "Host: ", Authority, "\r\n",
                                 "Connection: close\r\n",
                                 BodyHead, "\r\n",
                                 case ReqBody of none -> []; _ -> ReqBody end],
                      case gen_tcp:send(Sock, Request) of
                          ok -> ok;
                          {error, SendErr} -> gen_tcp:close(Sock), NoAnswer(SendErr)
                      end,
                      Answer = fun Recv(Raw) ->
                                       case gen_tcp:recv(Sock, 0, Left()) of
                                           {ok, Data} ->
                                               Raw2 = <<Raw/binary, Data/binary>>,
                                               case HttpComplete(Raw2, false) of
                                                   more -> Recv(Raw2);
                                                   Done -> Done
                                               end;
                                           {error, closed} -> HttpComplete(Raw, true);
                                           {error, RecvErr} -> {error, RecvErr}
                                       end
                               end(<<>>),
                      gen_tcp:close(Sock),
                      case Answer of
                          {done, Status, Body} -> {Status, Body};
                          {error, AnsErr} -> NoAnswer(AnsErr)
                      end
              end,
%% A 200 answer's body; anything else: exit 3 with what the sidecar said.
SidecarCall = fun(Admin, Method, Target, ContentType, ReqBody) ->
                      case HttpRequest(Admin, Method, Target, ContentType, ReqBody) of
                          {200, Body} -> Body;
                          {Status, Body} ->
                              Text = case unicode:characters_to_list(Body) of
                                         Chars when is_list(Chars) -> Chars;
                                         _ -> binary_to_list(Body)
                                     end,
                              ProbeFail(3, "the sidecar answered ~ts ~ts with ~b: ~ts",
                                        [Method, Target, Status, Text])
                      end
              end,

%% ---------------------------------------------------------------------
%% The other pods' node names, lowest ordinal first, as the sidecar knows
%% them from the Kubernetes API (text/plain, one per line, maybe none).
FetchNodes = fun(Admin, Self) ->
                     Body = SidecarCall(Admin, "GET",
                                        ["/cluster/nodes?self=", UrlEncode(Self)], none, none),
                     Lines = [string:trim(Line) || Line <- binary:split(Body, <<"\n">>, [global])],
                     [case string:split(Line, "@") of
                          [<<_, _/binary>>, <<_, _/binary>>] -> binary_to_atom(Line, utf8);
                          _ -> ProbeFail(1, "the sidecar listed ~tp, not a node name", [Line])
                      end || Line <- Lines, Line =/= <<>>]
             end,

%% ---------------------------------------------------------------------
%% What one node's Mnesia says, as the entrypoint's QUERY decided it:
%%   down      no pong
%%   empty     no pong, but its beacon cluster-empty-NODE answers (its pod
%%             is here without a database: it holds no copy of anything)
%%   starting  pong, Mnesia not running
%%   waiting   Mnesia runs, some local table is not loaded
%%   loaded    every local table loaded, the ejabberd application not running
%%   started   ejabberd runs
%% whether its pod answers at all (reachable: its VM answers, or else a TCP
%% connection to its EPMD port, the sidecar's, is accepted or refused
%% within 2 s; no answer means this pod is cut off from it),
%% plus its schema's nodes, the ones Mnesia sees running, its uptime, and
%% which of the other observed nodes its Mnesia saw go down (mnesia_recover
%% keeps these records across restarts until the two meet again: at boot
%% a node loads its own copy when it saw every other holder go, else it
%% waits). Only a running Mnesia is asked that. And whether its volume
%% holds the entrypoint's marker (.kube-epmd-clustered in Mnesia's
%% directory): its database is a cluster's (it seeded or joined one), even
%% when its schema lists only itself.
ObserveNode = fun(Node, Observed) ->
                      Call = fun(M, F, A) -> rpc:call(Node, M, F, A, RpcTimeoutMs) end,
                      Names = fun(L) when is_list(L) -> [NodeBin(N) || N <- L, is_atom(N)];
                                 (_) -> []
                              end,
                      Fact = fun(State, Db, Running, Uptime, SawDown, Clustered, Reachable) ->
                                     {object, [{<<"node">>, NodeBin(Node)},
                                               {<<"state">>, atom_to_binary(State, utf8)},
                                               {<<"db_nodes">>, Names(Db)},
                                               {<<"running_db_nodes">>, Names(Running)},
                                               {<<"uptime">>, Uptime},
                                               {<<"saw_down">>, Names(SawDown)},
                                               {<<"clustered">>, Clustered},
                                               {<<"reachable">>, Reachable}]}
                             end,
                      %% The pod's EPMD (the sidecar) answers: accepted, or
                      %% refused (the host answered); anything else, a
                      %% timeout or no route, is a pod cut off from this one.
                      PodAnswers = fun() ->
                                           [_, Host] = string:split(atom_to_list(Node), "@"),
                                           Port = case os:getenv("ERL_EPMD_PORT") of
                                                      false -> 4369;
                                                      P -> list_to_integer(P)
                                                  end,
                                           %% A blackhole route makes connect/4 raise
                                           %% badarg (EINVAL) rather than return.
                                           try gen_tcp:connect(Host, Port, [], 2000) of
                                               {ok, Sock} -> gen_tcp:close(Sock), true;
                                               {error, econnrefused} -> true;
                                               {error, _} -> false
                                           catch _:_ -> false
                                           end
                                   end,
                      case net_adm:ping(Node) of
                          pang ->
                              Beacon = list_to_atom("cluster-empty-" ++ atom_to_list(Node)),
                              case net_adm:ping(Beacon) of
                                  pong -> Fact(empty, [], [], 0, [], false, true);
                                  pang -> Fact(down, [], [], 0, [], false, PodAnswers())
                              end;
                          pong ->
                              Db = Call(mnesia, system_info, [db_nodes]),
                              Running = Call(mnesia, system_info, [running_db_nodes]),
                              Apps = Call(application, which_applications, [5000]),
                              State = case is_list(Apps) andalso lists:keymember(ejabberd, 1, Apps) of
                                          true -> started;
                                          false ->
                                              case Call(mnesia, system_info, [is_running]) of
                                                  yes ->
                                                      Local = Call(mnesia, system_info, [local_tables]),
                                                      case is_list(Local) andalso
                                                          Call(mnesia, wait_for_tables, [Local -- [schema], 0]) of
                                                          ok -> loaded;
                                                          _ -> waiting
                                                      end;
                                                  _ -> starting
                                              end
                                      end,
                              Uptime = case Call(erlang, statistics, [wall_clock]) of
                                           {Ms, _} when is_integer(Ms) -> Ms div 1000;
                                           _ -> 0
                                       end,
                              SawDown = case lists:member(State, [waiting, loaded, started]) of
                                            true ->
                                                [Other || Other <- Observed, Other =/= Node,
                                                          Call(mnesia_recover, has_mnesia_down, [Other]) =:= true];
                                            false -> []
                                        end,
                              Clustered = case Call(mnesia, system_info, [directory]) of
                                              Dir when is_list(Dir) ->
                                                  Marker = filename:join(Dir, ".kube-epmd-clustered"),
                                                  Call(filelib, is_regular, [Marker]) =:= true;
                                              _ -> false
                                          end,
                              Fact(State, Db, Running, Uptime, SawDown, Clustered, true)
                      end
              end,
%% Every node at once (a node that does not answer costs a connect
%% timeout, seconds), the facts in the order given. A node whose facts are
%% not in within the budget fails the run: better no plan than a guess.
ObserveAll = fun(Observed) ->
                     Deadline = erlang:monotonic_time(millisecond) + ObserveBudgetMs,
                     Started = [{Node, spawn_monitor(fun() -> exit({fact, ObserveNode(Node, Observed)}) end)}
                                || Node <- Observed],
                     [receive
                          {'DOWN', Ref, process, Pid, {fact, Fact}} -> Fact;
                          {'DOWN', Ref, process, Pid, Crash} ->
                              ProbeFail(1, "observing ~ts failed: ~tp", [Node, Crash])
                      after max(0, Deadline - erlang:monotonic_time(millisecond)) ->
                              ProbeFail(1, "~ts: no facts within ~b ms", [Node, ObserveBudgetMs])
                      end || {Node, {Pid, Ref}} <- Started]
             end,
%% SELF first, then the other pods in the sidecar's order.
Observation = fun(Admin, Self) ->
                      Others = FetchNodes(Admin, Self),
                      ObserveAll([list_to_atom(Self) | Others])
              end,

%% ---------------------------------------------------------------------
%% force-load: what the entrypoint's FORCE_LOAD did. The node's VM is up a
%% moment before its Mnesia is, so wait up to 20 s for Mnesia to run.
ForceLoad = fun(Node) ->
                    case net_adm:ping(Node) of
                        pong -> ok;
                        pang -> ProbeFail(1, "~ts does not answer", [Node])
                    end,
                    Deadline = erlang:monotonic_time(millisecond) + 20000,
                    WaitRunning = fun Wait() ->
                                          Left = Deadline - erlang:monotonic_time(millisecond),
                                          case Left > 0 andalso
                                              rpc:call(Node, mnesia, system_info, [is_running], min(Left, 5000)) of
                                              yes -> ok;
                                              false -> ProbeFail(1, "Mnesia does not run on ~ts after 20 s", [Node]);
                                              _ -> timer:sleep(min(1000, max(0, Left))), Wait()
                                          end
                                  end,
                    WaitRunning(),
                    %% Not the schema: Mnesia loads it at start, and
                    %% force_load_table(schema) answers {error,{bad_type,schema}}.
                    Tables = case rpc:call(Node, mnesia, system_info, [local_tables], RpcTimeoutMs) of
                                 L when is_list(L) -> L -- [schema];
                                 Err -> ProbeFail(1, "local_tables on ~ts: ~tp", [Node, Err])
                             end,
                    Results = [begin
                                   Result = rpc:call(Node, mnesia, force_load_table, [Table], 30000),
                                   EmitStdout(unicode:characters_to_binary(io_lib:format("~ts ~w~n", [Table, Result]))),
                                   Result
                               end || Table <- Tables],
                    case lists:all(fun(R) -> R =:= yes end, Results) of
                        true -> ok;
                        false -> ProbeFail(1, "not every table of ~ts loaded (see above)", [Node])
                    end
            end,

%% ---------------------------------------------------------------------
%% diverged: which tables hold other content on SELF than on FROM (after a
%% partition, what SELF's side wrote that a restart will discard). A
%% table's content is compared sorted (tables of up to 100 000 records:
%% the content crosses the network once), else by size only.
Diverged = fun(Self, From) ->
                   Local = case rpc:call(Self, mnesia, system_info, [local_tables], RpcTimeoutMs) of
                               L when is_list(L) -> L -- [schema];
                               Err -> ProbeFail(1, "local_tables on ~ts: ~tp", [Self, Err])
                           end,
                   Size = fun(Node, Table) -> rpc:call(Node, mnesia, table_info, [Table, size], RpcTimeoutMs) end,
                   %% A dirty select runs on NODE's own copy, whatever its
                   %% storage (ets or dets: ejabberd's passwd is on disc only).
                   Content = fun(Node, Table) ->
                                     case rpc:call(Node, mnesia, dirty_select,
                                                   [Table, [{'_', [], ['$_']}]], 30000) of
                                         Rows when is_list(Rows) -> lists:sort(Rows);
                                         Other -> Other
                                     end
                             end,
                   [begin
                        {S1, S2} = {Size(Self, Table), Size(From, Table)},
                        Differs = S1 =/= S2 orelse
                            (is_integer(S1) andalso S1 =< 100000 andalso
                             Content(Self, Table) =/= Content(From, Table)),
                        case Differs of
                            true -> EmitStdout(io_lib:format("~ts ~w ~w~n", [Table, S1, S2]));
                            false -> ok
                        end
                    end || Table <- Local]
           end,

%% ---------------------------------------------------------------------
%% The modes.
ProbeMain =
    fun Mode(["nodes", AdminArg, SelfArg]) ->
            Admin = ArgAdmin(AdminArg),
            _ = ArgNode("SELF", SelfArg),
            EmitStdout([[NodeBin(N), $\n] || N <- FetchNodes(Admin, SelfArg)]);
       Mode(["query", AdminArg, SelfArg]) ->
            Admin = ArgAdmin(AdminArg),
            _ = ArgNode("SELF", SelfArg),
            Facts = Observation(Admin, SelfArg),
            EmitStdout([JsonEncode({object, [{<<"self">>, unicode:characters_to_binary(SelfArg)},
                                             {<<"nodes">>, Facts}]}), $\n]);
       Mode(["plan", AdminArg, SelfArg, PhaseArg, MarkerArg, SinceStartArg, SincePhaseArg,
         LoadGraceArg, HoldMaxArg, JoinTimeoutArg]) ->
            Mode(["plan", AdminArg, SelfArg, PhaseArg, MarkerArg, SinceStartArg, SincePhaseArg,
                       LoadGraceArg, HoldMaxArg, JoinTimeoutArg, "pause_minority", "false"]);
       Mode(["plan", AdminArg, SelfArg, PhaseArg, MarkerArg, SinceStartArg, SincePhaseArg,
         LoadGraceArg, HoldMaxArg, JoinTimeoutArg, PartitionArg, PausedArg]) ->
            %% Every argument checked before anything is asked of anyone.
            Admin = ArgAdmin(AdminArg),
            _ = ArgNode("SELF", SelfArg),
            Phase = ArgOneOf("PHASE", PhaseArg, ["boot", "joining", "running"]),
            Marker = ArgOneOf("MARKER", MarkerArg, ["true", "false"]),
            Partition = ArgOneOf("PARTITION", PartitionArg, ["pause_minority", "autoheal"]),
            Paused = ArgOneOf("PAUSED", PausedArg, ["true", "false"]),
            Counts = [{Key, ArgCount(What, Str)}
                      || {Key, What, Str} <- [{since_start, "SINCE_START", SinceStartArg},
                                              {since_phase, "SINCE_PHASE", SincePhaseArg},
                                              {load_grace, "LOAD_GRACE", LoadGraceArg},
                                              {hold_max, "HOLD_MAX", HoldMaxArg},
                                              {join_timeout, "JOIN_TIMEOUT", JoinTimeoutArg}]],
            Count = fun(Key) -> element(2, lists:keyfind(Key, 1, Counts)) end,
            Facts = Observation(Admin, SelfArg),
            Body = JsonEncode({object,
                               [{<<"self">>, unicode:characters_to_binary(SelfArg)},
                                {<<"phase">>, atom_to_binary(Phase, utf8)},
                                {<<"marker">>, Marker},
                                {<<"paused">>, Paused},
                                {<<"since_start">>, Count(since_start)},
                                {<<"since_phase">>, Count(since_phase)},
                                {<<"timing">>, {object, [{<<"load_grace">>, Count(load_grace)},
                                                         {<<"hold_max">>, Count(hold_max)},
                                                         {<<"join_timeout">>, Count(join_timeout)},
                                                         {<<"partition">>, atom_to_binary(Partition, utf8)}]}},
                                {<<"nodes">>, Facts}]}),
            EmitStdout(SidecarCall(Admin, "POST", "/cluster/plan", "application/json", Body));
       Mode(["force-load", NodeArg]) ->
            ForceLoad(ArgNode("NODE", NodeArg));
       Mode(["diverged", SelfArg, FromArg]) ->
            Diverged(ArgNode("SELF", SelfArg), ArgNode("FROM", FromArg));
       Mode(["schema", DirArg, SelfArg]) ->
            %% The nodes of the schema on disc in DIR, read by this hidden
            %% node's Mnesia without starting it (its db_nodes come from
            %% the disc then; just this node when DIR holds no schema).
            %% The entrypoint asks this while ejabberd does not run.
            ok = case application:load(mnesia) of
                     ok -> ok;
                     {error, {already_loaded, mnesia}} -> ok
                 end,
            ok = application:set_env(mnesia, dir, DirArg),
            Self = ArgNode("SELF", SelfArg),
            Nodes = [N || N <- mnesia:system_info(db_nodes), N =/= node(), N =/= Self],
            EmitStdout([[NodeBin(N), $\n] || N <- Nodes]);
       Mode(Other) ->
            BadArg("unknown mode or wrong number of arguments: ~tp", [Other])
    end,

%% The exit code is ours to set (the -eval wrapper's halt(2) is for a file
%% that does not parse): the outcome of the mode, or the failure's code.
%% OTP 25 hands the plain arguments over as the command line's bytes (a
%% UTF-8 "é" is two elements); decoded here so that SELF comes back as
%% given. A list that is not UTF-8 bytes (already characters) stays as it is.
PlainArgs = [try unicode:characters_to_list(list_to_binary(Arg)) of
                 Chars when is_list(Chars) -> Chars;
                 _ -> Arg
             catch error:badarg -> Arg
             end || Arg <- init:get_plain_arguments()],
ProbeExit = try ProbeMain(PlainArgs) of
                _ -> 0
            catch
                throw:{cluster_probe_exit, ExitCode, ExitMsg} ->
                    io:format(standard_error, "cluster-probe: ~ts~n", [ExitMsg]),
                    ExitCode;
                ErrClass:ErrReason:ErrStack ->
                    io:format(standard_error, "cluster-probe: ~tp:~tp~n~tp~n", [ErrClass, ErrReason, ErrStack]),
                    1
            end,
halt(ProbeExit).
