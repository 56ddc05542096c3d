#!/usr/bin/perl
# A SIP user agent server on an independent SIP stack (Net::SIP, Debian's libnet-sip-perl), as
# a plain-mode backend of the balancer in tests/tests/real_stacks.rs.
#
#   netsip-uas.pl --listen IP:PORT [--bye-after SECS] [--answer CODE] [--ring SECS]
#                 [--trace FILE]
#
# Each INVITE is answered 100 (Net::SIP's own), 180, then after --ring seconds (default 0)
# --answer (default 200, with an SDP body; any other code rejects the call). --bye-after SECS
# (default 1, 0: never) after the ACK of a 200 it hangs up with its own BYE, built and routed by
# Net::SIP from the dialog's route set (the Record-Route of the INVITE). A CANCEL while ringing
# gets 200 and the INVITE 487; a BYE from the caller gets 200 and cancels the hang-up.
#
# stdout gets one line per message, flushed at once:
#   recv INVITE call-id=ID peer=IP:PORT        a request received, from that socket address
#   sent 180 INVITE call-id=ID peer=IP:PORT    a response (code, CSeq method) sent to that address
#   sent BYE call-id=ID peer=IP:PORT           a request sent to that address (its first Route)
#   recv 200 BYE call-id=ID peer=IP:PORT       a response received
# and one line per TCP connection it opens itself:
#   connect local=IP:PORT peer=IP:PORT
# `listening IP:PORT` once the socket listens, `exit` on SIGTERM. --trace FILE gets every
# message whole, in the format of SIPp's -trace_msg log, so the tests read it with the same
# parser (tests/src/trace.rs) as the SIPp peers' traces.
#
# What Net::SIP 0.835 does with TCP connections (Net::SIP::SocketPool::sendto, and seen with
# `ss -tnp` against the balancer):
# - A response goes back on the connection its request came in on (the pool remembers the
#   socket per transaction id).
# - A request goes on an existing connection only if that connection's *peer address* is
#   exactly the destination IP:port (from the first Route entry, else the Request-URI).
#   The balancer's connection to this backend comes from an ephemeral port of the balancer, so
#   it never matches the balancer's advertised listen address: the first BYE opens a new
#   connection from this leg's IP (ephemeral port) to the balancer's listener, and later BYEs
#   to the same address reuse that one. It never sends a request on an accepted connection.
# - Idle connections are closed after 15 to 120 s (the more are open, the sooner); the tests
#   are shorter than that.
# - Its Via is `SIP/2.0/TCP IP:PORT;branch=z9hG4bK...` with the listen address and no rport.
#   On each request it receives it sets `received=SENDER-IP` in the top Via whenever the Via
#   host is not the sender's IP (RFC 3261 §18.2.1), replacing a `received` already there. The
#   balancer adds no Via of its own, so the sender is the balancer: a caller's Via comes back in
#   the responses with `received=` the balancer's own address.
# - Its Contact is this leg's contact (`sip:USER@IP:PORT;transport=tcp` here), added to the 2xx
#   by the leg. It sends 100 Trying to every new INVITE by itself.
# - The BYE's Request-URI is the caller's Contact, its Route the INVITE's Record-Route entries
#   in order, CSeq from its own counter (1 for the first request of the UAS), Max-Forwards 70.
# - Net::SIP::Simple's default media (RTP echo) hangs a call up after 10 s without RTP; this
#   script turns media off (init_media), so a call lasts until a BYE.

use strict;
use warnings;
use Getopt::Long;
use IO::Handle;
use POSIX qw(strftime);
use Time::HiRes qw(gettimeofday);
use Socket qw(getnameinfo NI_NUMERICHOST NI_NUMERICSERV);
use Net::SIP;
use Net::SIP::Util qw(ip_parts2string ip_string2parts);

my ($listen, $bye_after, $answer, $ring, $trace_file) = (undef, 1, 200, 0, undef);
GetOptions(
    'listen=s'    => \$listen,
    'bye-after=f' => \$bye_after,
    'answer=i'    => \$answer,
    'ring=f'      => \$ring,
    'trace=s'     => \$trace_file,
) && $listen or die "usage: $0 --listen IP:PORT [--bye-after SECS] [--answer CODE]"
    . " [--ring SECS] [--trace FILE]\n";

STDOUT->autoflush(1);
my $trace;
if ($trace_file) {
    open($trace, '>', $trace_file) or die "$trace_file: $!\n";
    $trace->autoflush(1);
}

sub say_line { print join(' ', @_), "\n" }

# One entry of the -trace_msg format: separator and time, direction and size, the message.
sub trace_msg {
    my ($dir, $packet) = @_;
    return if !$trace;
    my $text = $packet->as_string;
    my ($s, $us) = gettimeofday();
    my $head = $dir eq 'sent'
        ? sprintf('TCP message sent (%d bytes):', length $text)
        : sprintf('TCP message received [%d] bytes :', length $text);
    printf $trace "%s %s.%06d\n%s\n\n%s\n", '-' x 47,
        strftime('%Y-%m-%d %H:%M:%S', localtime $s), $us, $head, $text;
}

# The label of a packet: `INVITE` for a request, `180 INVITE` for a response.
sub label {
    my $p = shift;
    return $p->is_request ? $p->method : $p->code . ' ' . $p->method;
}

sub addr_of {
    my $h = shift;
    return ip_parts2string($h->{addr}, $h->{port}, $h->{family});
}

sub log_packet {
    my ($dir, $packet, $peer) = @_;
    say_line($dir, label($packet), 'call-id=' . $packet->callid, 'peer=' . addr_of($peer));
    trace_msg($dir, $packet);
}

# The leg logs every message it receives, and every message it sends as it goes to the socket
# pool (sendto: after the leg has added its Via and Contact).
package LoggingLeg;
use base 'Net::SIP::Leg';

sub receive {
    my ($self, $packet, $from) = @_;
    main::log_packet('recv', $packet, $from);
    return $self->SUPER::receive($packet, $from);
}

sub sendto {
    my ($self, $packet, $dst, $callback) = @_;
    main::log_packet('sent', $packet, $dst);
    return $self->SUPER::sendto($packet, $dst, $callback);
}

package main;

# Logs the connections the stack opens itself: the proof of what it does with a BYE.
{
    no warnings 'redefine';
    my $connect = \&Net::SIP::SocketPool::_tcp_connect;
    *Net::SIP::SocketPool::_tcp_connect = sub {
        my ($pool, $fo, $peer, $callback, $from_loop) = @_;
        my @r = $connect->(@_);
        if (!$from_loop) {
            my $sockname = getsockname($fo->{fd});
            my (undef, $host, $port) = $sockname
                ? getnameinfo($sockname, NI_NUMERICHOST | NI_NUMERICSERV) : ();
            my (undef, $phost, $pport) = getnameinfo($peer, NI_NUMERICHOST | NI_NUMERICSERV);
            say_line('connect', 'local=' . ip_parts2string($host // '?', $port // 0),
                'peer=' . ip_parts2string($phost, $pport));
        }
        return @r;
    };
}

my ($ip, $port) = ip_string2parts($listen);
my $contact_host = ip_parts2string($ip, $port);
my $leg = LoggingLeg->new(
    proto   => 'tcp',
    addr    => $ip,
    port    => $port,
    contact => "sip:$contact_host;transport=tcp",
);
my $ua = Net::SIP::Simple->new(legs => [$leg], from => "sip:service\@$contact_host");

my %ended;    # call-id => 1 once cancelled or hung up by the caller

# Sends a response to `$request` in `$call`'s context, on the connection it came in on.
sub respond {
    my ($call, $request, $code, $leg, $from) = @_;
    $call->{endpoint}->new_response($call->{ctx}, $request->create_response($code), $leg, $from);
}

$ua->listen(
    # No RTP: the default echo would hang up after 10 s of silence (see the header).
    init_media => sub { },
    cb_create => sub {
        my ($call, $request, $leg, $from) = @_;
        # Our own receive callback: 180 at once, the final answer after --ring; everything else
        # (ACK, BYE, CANCEL, OPTIONS) goes on to Net::SIP's call handling.
        return sub {
            my ($call, $endpoint, $ctx, $error, $code, $packet, $leg, $from) = @_;
            my @args = @_;
            if ($packet && $packet->is_request) {
                my $cid = $packet->callid;
                my $method = $packet->method;
                if ($method eq 'INVITE' && !$call->{param}{_answered}++) {
                    respond($call, $packet, 180, $leg, $from);
                    my $answer_now = sub {
                        return if $ended{$cid};
                        Net::SIP::Simple::Call::receive(@args);
                    };
                    return $answer_now->() if $ring <= 0;
                    $ua->add_timer($ring, $answer_now);
                    return;
                }
                $ended{$cid} = 1 if $method eq 'CANCEL' || $method eq 'BYE';
            }
            return Net::SIP::Simple::Call::receive(@args);
        };
    },
    cb_invite => sub {
        my ($call, $request) = @_;
        # undef: Net::SIP's default 200 with the SDP of the media sockets it opened.
        return $answer == 200 ? undef : $request->create_response($answer);
    },
    cb_established => sub {
        my (undef, $call) = @_;
        # The ACK of a rejection reaches this callback too.
        return if $answer != 200 || $bye_after <= 0;
        my $cid = $call->{ctx}->callid;
        $ua->add_timer($bye_after, sub {
            return if $ended{$cid}++;
            $call->bye;
        });
    },
);

$SIG{TERM} = sub { say_line('exit'); exit 0 };
say_line('listening', $contact_host);
$ua->loop;
